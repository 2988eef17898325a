package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/statemesh/statemesh/internal/dashboard"
)

func newDashboardCmd(e *env) *cobra.Command {
	var (
		a      adminFlags
		listen string
		direct bool
	)
	cmd := &cobra.Command{
		Use:   "dashboard [--listen 127.0.0.1:9470] [--direct]",
		Short: "Serve the web dashboard on this machine (read-only proxy to the admin API), or print the controller's own dashboard URL",
		Long: `The dashboard shows regions, gateways, clusters and nodes (health and class colours,
designated gateways), node detail (class, evidence, peers, handshakes, probed paths),
the region × region latency matrix and recent events, refreshed every 2 s.

By default this command serves it on --listen and forwards the page's GET /v1/...
calls to the controller with the admin token from admin.json (nothing else passes).
Anyone who can reach --listen can read the admin API: keep it on loopback.

With --direct it prints the controller's own /ui/ URL with the admin token in the
fragment instead; the browser must trust the controller's CA (the "ca" of admin.json).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			if direct {
				fmt.Fprintln(e.stdout, c.DashboardURL())
				return nil
			}
			l, err := net.Listen("tcp", listen)
			if err != nil {
				return err
			}
			srv := &http.Server{Handler: dashboard.Local(c.ReadOnlyProxy(l.Addr().String())), ReadHeaderTimeout: 10 * time.Second}
			fmt.Fprintf(e.stdout, "dashboard on http://%s/ (read-only; Ctrl-C stops)\n", l.Addr())
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			go func() {
				<-ctx.Done()
				sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				defer cancel()
				srv.Shutdown(sctx)
			}()
			if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		},
	}
	a.register(cmd)
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:9470", "address to serve the dashboard on (keep it on loopback)")
	cmd.Flags().BoolVar(&direct, "direct", false, "print the controller's own dashboard URL (with the admin token) instead of serving")
	return cmd
}
