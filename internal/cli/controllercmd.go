package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/atomicfile"
	"github.com/statemesh/statemesh/internal/attest"
	"github.com/statemesh/statemesh/internal/controller"
	"github.com/statemesh/statemesh/internal/netmaker"
	"github.com/statemesh/statemesh/internal/netmakersync"
	"github.com/statemesh/statemesh/internal/secrets"
	"github.com/statemesh/statemesh/internal/server"
	"github.com/statemesh/statemesh/internal/store"
	"github.com/statemesh/statemesh/internal/store/bolt"
	etcdstore "github.com/statemesh/statemesh/internal/store/etcd"
	"github.com/statemesh/statemesh/internal/tpm"
)

// AdminConfigFile is the admin credential the controller writes in its data
// directory.
const AdminConfigFile = "admin.json"

func newLogger(w *os.File, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, usagef("--log-level %q: use debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}

type controllerFlags struct {
	dataDir, listen, advertise, storeKind, etcdEndpoints, etcdPrefix, logLevel, apply, kekFile, metricsListen string
	hosts                                                                                                     []string
	heartbeatTimeout                                                                                          time.Duration
	netmakerURL, netmakerTokenFile                                                                            string
	netmakerNetworks                                                                                          []string
	netmakerEvery, netmakerKeyTTL                                                                             time.Duration
	tpm                                                                                                       string
}

// netmakerConfig builds the Netmaker connection from the flags: the token
// from a file or $STATEMESH_NETMAKER_TOKEN, networks as
// REGION=NETWORK:CIDR.
func netmakerConfig(f controllerFlags) (*netmakersync.Config, error) {
	if f.netmakerURL == "" {
		if len(f.netmakerNetworks) > 0 {
			return nil, usagef("--netmaker-network needs --netmaker-url")
		}
		return nil, nil
	}
	token, err := netmaker.LoadToken(f.netmakerTokenFile)
	if err != nil {
		return nil, usagef("--netmaker-url needs a token (--netmaker-token-file or $%s): %v", netmaker.TokenEnv, err)
	}
	cl, err := netmaker.NewClient(f.netmakerURL, token.Reveal(), 10*time.Second)
	if err != nil {
		return nil, usageError{err}
	}
	nets := map[string]netmaker.NetworkSpec{}
	for _, m := range f.netmakerNetworks {
		region, rest, ok1 := strings.Cut(m, "=")
		name, cidr, ok2 := strings.Cut(rest, ":")
		if _, err := netip.ParsePrefix(cidr); !ok1 || !ok2 || err != nil || region == "" || name == "" {
			return nil, usagef("--netmaker-network %q: write REGION=NETWORK:CIDR, e.g. eu-central=nm-eu:10.201.0.0/16", m)
		}
		nets[region] = netmaker.NetworkSpec{Name: name, AddressRange: cidr}
	}
	if len(nets) == 0 {
		return nil, usagef("--netmaker-url needs at least one --netmaker-network REGION=NETWORK:CIDR")
	}
	if f.netmakerKeyTTL < 0 || f.netmakerKeyTTL > 0 && f.netmakerKeyTTL < time.Hour {
		return nil, usagef("--netmaker-key-ttl %s: give 0 (keys do not expire) or at least 1h", f.netmakerKeyTTL)
	}
	return &netmakersync.Config{Client: cl, Networks: nets, Every: f.netmakerEvery, KeyTTL: f.netmakerKeyTTL}, nil
}

func newControllerCmd(e *env) *cobra.Command {
	var f controllerFlags
	cmd := &cobra.Command{
		Use:   "controller [--data-dir DIR] [--listen ADDR] [--store bolt|etcd --etcd-endpoints A,B,C]",
		Short: "Run the controller: the mesh's source of truth and peer manager",
		Long: `Run the controller. With the default embedded store (bbolt) it needs nothing else:
state lives in DATA-DIR/statemesh.db. With --store etcd, several replicas share one etcd
cluster; every allocation is a compare-and-swap transaction.

At first start the controller creates its CA and an admin credential, and writes
DATA-DIR/admin.json (mode 0600) for the CLI:

  export STATEMESH_CONFIG=DATA-DIR/admin.json
  statemesh apply -f mesh.yaml`,
		PreRunE: func(cmd *cobra.Command, args []string) error { return checkControllerFlags(f) },
		RunE: func(cmd *cobra.Command, args []string) error {
			return runController(cmd.Context(), e, f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.dataDir, "data-dir", "/var/lib/statemesh", "state directory (embedded store, admin.json)")
	fl.StringVar(&f.listen, "listen", "0.0.0.0:7443", "address of the HTTPS API")
	fl.StringVar(&f.advertise, "advertise", "", "URL agents and the CLI use to reach this controller (default https://<listen address>)")
	fl.StringSliceVar(&f.hosts, "tls-san", nil, "extra names/addresses for the serving certificate")
	fl.StringVar(&f.storeKind, "store", "bolt", "state store: bolt (embedded) or etcd")
	fl.StringVar(&f.etcdEndpoints, "etcd-endpoints", "", "comma-separated etcd client URLs (with --store etcd)")
	fl.StringVar(&f.etcdPrefix, "etcd-prefix", "/statemesh/", "key prefix in etcd")
	fl.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fl.StringVar(&f.apply, "apply", "", "apply this spec at start (as statemesh apply -f would)")
	fl.DurationVar(&f.heartbeatTimeout, "gateway-timeout", 3*time.Second, "mark a gateway unhealthy after this long without a heartbeat")
	fl.StringVar(&f.metricsListen, "metrics-listen", "127.0.0.1:9464", "serve Prometheus metrics on this address at /metrics (\"\" to turn off; :9464 for every interface, for a scraper on another host)")
	fl.StringVar(&f.tpm, "tpm", "none", "the controller's own TPM (/dev/tpmrm0, swtpm://HOST:PORT, unix:PATH, mssim://HOST:PORT): agents with --controller-attestation attest it (mutual aTLS); none: no TPM")
	fl.StringVar(&f.netmakerURL, "netmaker-url", "", "keep this Netmaker server in line with the mesh (docs/netmaker.md)")
	fl.StringVar(&f.netmakerTokenFile, "netmaker-token-file", "", "file with a super-admin user's Netmaker access token (needed on Netmaker Pro: the master key cannot create tags or ACL policies) or, on the community edition, the master key (default $STATEMESH_NETMAKER_TOKEN); never logged")
	fl.StringArrayVar(&f.netmakerNetworks, "netmaker-network", nil, "REGION=NETWORK:CIDR: the Netmaker network of a region and its address range (repeat per region)")
	fl.DurationVar(&f.netmakerEvery, "netmaker-interval", 10*time.Second, "how often to reconcile Netmaker (and at once after a node is quarantined or removed)")
	fl.DurationVar(&f.netmakerKeyTTL, "netmaker-key-ttl", 0, "make the clusters' Netmaker enrollment keys expire after this long, replaced by new ones once less than a fifth is left (0: they do not expire)")
	fl.StringVar(&f.kekFile, "kek-file", "", "key-encryption keyring sealing secrets at rest (default DATA-DIR/kek, created at first start; or $STATEMESH_KEK). Replicas on one etcd need the same one")
	return cmd
}

// checkControllerFlags checks the controller's flags without side effects,
// so a wrong command line fails at once with the flag's name.
func checkControllerFlags(f controllerFlags) error {
	var l slog.Level
	if err := l.UnmarshalText([]byte(f.logLevel)); err != nil {
		return usagef("--log-level %q: use debug, info, warn or error", f.logLevel)
	}
	switch f.storeKind {
	case "bolt":
	case "etcd":
		if f.etcdEndpoints == "" {
			return usagef("--store etcd needs --etcd-endpoints")
		}
		for _, ep := range strings.Split(f.etcdEndpoints, ",") {
			if u, err := url.Parse(ep); err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
				return usagef("--etcd-endpoints: %q is not an http(s)://HOST:PORT URL", ep)
			}
		}
	default:
		return usagef("--store %q: use bolt or etcd", f.storeKind)
	}
	for name, v := range map[string]string{"--listen": f.listen, "--metrics-listen": f.metricsListen} {
		if v == "" && name == "--metrics-listen" {
			continue
		}
		if _, _, err := net.SplitHostPort(v); err != nil {
			return usagef("%s %q: write HOST:PORT (%v)", name, v, err)
		}
	}
	if f.advertise != "" {
		if u, err := url.Parse(f.advertise); err != nil || u.Scheme != "https" || u.Host == "" {
			return usagef("--advertise %q: write https://HOST:PORT", f.advertise)
		}
	}
	if f.heartbeatTimeout <= 0 {
		return usagef("--gateway-timeout %s: give a positive duration", f.heartbeatTimeout)
	}
	return nil
}

func openStore(ctx context.Context, f controllerFlags) (store.Store, error) {
	switch f.storeKind {
	case "bolt":
		return bolt.Open(f.dataDir, bolt.Options{})
	case "etcd":
		if f.etcdEndpoints == "" {
			return nil, usagef("--store etcd needs --etcd-endpoints")
		}
		return etcdstore.Open(ctx, etcdstore.Options{Endpoints: strings.Split(f.etcdEndpoints, ","), Prefix: f.etcdPrefix})
	}
	return nil, usagef("--store %q: use bolt or etcd", f.storeKind)
}

func runController(parent context.Context, e *env, f controllerFlags) error {
	log, err := newLogger(os.Stderr, f.logLevel)
	if err != nil {
		return err
	}
	if parent == nil {
		parent = context.Background()
	}
	ctx, stop := signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)
	defer stop()
	if was, err := atomicfile.PrivateDir(f.dataDir); err != nil {
		return fmt.Errorf("--data-dir: %w", err)
	} else if was != 0 {
		log.Warn("the data directory was readable by others; made it private (0700)", "dir", f.dataDir, "was", fmt.Sprintf("%04o", was))
	}
	kr, err := loadKeyring(f.dataDir, f.kekFile, f.storeKind == "bolt", log)
	if err != nil {
		return err
	}
	st, err := openStore(ctx, f)
	if err != nil {
		return err
	}
	defer st.Close()
	nm, err := netmakerConfig(f)
	if err != nil {
		return err
	}
	if nm != nil {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		cr, err := netmaker.CheckCredential(cctx, nm.Client)
		cancel()
		switch {
		case errors.Is(err, netmaker.ErrUnavailable):
			log.Warn("netmaker: the server cannot be reached to check the token; the passes retry", "err", err)
		case err != nil:
			return fmt.Errorf("--netmaker-url %s: %w", f.netmakerURL, err)
		case cr.MasterKey:
			log.Info("netmaker: using the master key on a community server: admission and removal only (no tags or tag-based ACL policies there)")
		}
	}
	var selfTPM controller.TPM
	if f.tpm != "" && f.tpm != tpm.None {
		d := &attest.Device{URL: f.tpm}
		raw, err := d.Identity()
		if err != nil {
			return fmt.Errorf("--tpm %s: %w", f.tpm, err)
		}
		id, err := attest.DecodeIdentity(raw)
		if err != nil {
			return fmt.Errorf("--tpm %s: %w", f.tpm, err)
		}
		log.Info("agents can attest this controller (mutual aTLS)", "tpm", f.tpm, "ek-sha256", attest.EKDigest(id.EKPub))
		selfTPM = d
	}
	c, err := controller.New(controller.Config{Store: st, Logger: log, HeartbeatTimeout: f.heartbeatTimeout, Keyring: kr, TPM: selfTPM})
	if err != nil {
		return err
	}
	// Bind before the store gets its admin credential: a start that cannot
	// listen must not leave a store whose admin token no admin.json holds.
	l, err := net.Listen("tcp", f.listen)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", f.listen, err)
	}
	defer l.Close()
	adminToken, err := c.Bootstrap(ctx, "statemesh")
	if err != nil {
		return err
	}
	advertise := f.advertise
	if advertise == "" {
		host, port, _ := net.SplitHostPort(l.Addr().String())
		if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
			host = "127.0.0.1"
		}
		advertise = "https://" + net.JoinHostPort(host, port)
	}
	hosts := append([]string{}, f.hosts...)
	if u := strings.TrimPrefix(advertise, "https://"); u != advertise {
		if h, _, err := net.SplitHostPort(u); err == nil {
			hosts = append(hosts, h)
		}
	}
	cfgPath := filepath.Join(f.dataDir, AdminConfigFile)
	if adminToken != "" {
		if err := writeAdminConfig(cfgPath, api.AdminConfig{Server: advertise, CA: c.CA().CertPEM(), Token: adminToken}); err != nil {
			return err
		}
		log.Info("admin credential created", "file", cfgPath)
	} else if _, err := os.Stat(cfgPath); errors.Is(err, os.ErrNotExist) {
		log.Warn("the store already has an admin credential but this data dir has no admin.json; use the admin.json of the replica that created it", "file", cfgPath)
	}
	srv := server.New(server.Config{Controller: c, Logger: log, Hosts: hosts})
	if err := serveMetrics(ctx, f.metricsListen, c.MetricsHandler(), log); err != nil {
		return fmt.Errorf("--metrics-listen: %w", err)
	}
	errc := make(chan error, 2)
	go func() { errc <- c.Run(ctx) }()
	go func() { errc <- srv.Serve(ctx, l) }()
	select {
	case <-c.Ready():
	case err := <-errc:
		return err
	}
	if nm != nil {
		// Beside the controller, on its registry and its store.
		nm.Store, nm.Logger = st, log
		sync := netmakersync.New(c, *nm)
		if err := c.RegisterMetrics(sync.Collector()); err != nil {
			return err
		}
		go sync.Run(ctx)
	}
	if f.apply != "" {
		data, err := os.ReadFile(f.apply)
		if err != nil {
			return err
		}
		res, err := c.ApplySpec(ctx, data)
		if err != nil {
			return fmt.Errorf("applying %s: %w", f.apply, err)
		}
		log.Info("spec applied at start", "mesh", res.Mesh, "unchanged", res.Unchanged)
	}
	log.Info("controller serving", "listen", l.Addr().String(), "advertise", advertise, "store", f.storeKind, "config", cfgPath)
	fmt.Fprintf(e.stderr, "controller ready on %s (admin config: %s)\n", advertise, cfgPath)
	err = <-errc
	stop()
	if err != nil && ctx.Err() == nil {
		return err
	}
	return nil
}

func writeAdminConfig(path string, cfg api.AdminConfig) error {
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(path, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("writing admin config: %w", err)
	}
	return nil
}

// loadKeyring loads the key-encryption keyring from $STATEMESH_KEK or the
// file; with create set, a missing default file is created.
func loadKeyring(dataDir, file string, create bool, log *slog.Logger) (*secrets.Keyring, error) {
	explicit := file != ""
	if !explicit {
		file = filepath.Join(dataDir, "kek")
	}
	kr, ok, err := secrets.FromEnvOrFile("STATEMESH_KEK", file)
	if ok && err == nil {
		return kr, nil
	}
	if errors.Is(err, os.ErrNotExist) && !explicit {
		if !create {
			return nil, fmt.Errorf("no key-encryption keyring: give every replica the same --kek-file (statemesh secrets new-kek FILE makes one) or $STATEMESH_KEK")
		}
		kr, err = secrets.CreateFile(file)
		if err == nil {
			log.Info("created key-encryption keyring", "file", file)
		}
		return kr, err
	}
	if err != nil {
		return nil, fmt.Errorf("key-encryption keyring: %w", err)
	}
	return kr, nil
}

func newSecretsCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "secrets new-kek|rotate", Short: "Manage the key-encryption keyring that seals secrets at rest", Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return usagef("secrets what? use new-kek or rotate (got %q)", args)
		}}
	newKEK := &cobra.Command{
		Use:   "new-kek FILE",
		Short: "Create a keyring file (0600) with one fresh key",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			kr, err := secrets.CreateFile(args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "created %s with key %s\n", args[0], kr.Primary())
			return nil
		},
	}
	var f controllerFlags
	var id string
	rotate := &cobra.Command{
		Use:   "rotate [--kek-file FILE] [--data-dir DIR | --store etcd --etcd-endpoints ...]",
		Short: "Add a new primary key to the keyring and re-seal every secret in the store with it (stop the controller first when it uses the embedded store)",
		RunE: func(cmd *cobra.Command, args []string) error {
			file := f.kekFile
			if file == "" {
				file = filepath.Join(f.dataDir, "kek")
			}
			if id == "" {
				id = "k" + time.Now().UTC().Format("20060102T150405")
			}
			kr, err := secrets.AddPrimary(file, id)
			if err != nil {
				return err
			}
			ctx := context.Background()
			st, err := openStore(ctx, f)
			if err != nil {
				return err
			}
			defer st.Close()
			c, err := controller.New(controller.Config{Store: st, Keyring: kr})
			if err != nil {
				return err
			}
			if _, err := c.Bootstrap(ctx, "statemesh"); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "new primary key %s in %s; secrets in the store re-sealed (keep the old keys in the file until every replica restarted)\n", id, file)
			return nil
		},
	}
	rf := rotate.Flags()
	rf.StringVar(&f.kekFile, "kek-file", "", "keyring file (default DATA-DIR/kek)")
	rf.StringVar(&f.dataDir, "data-dir", "/var/lib/statemesh", "controller data dir")
	rf.StringVar(&f.storeKind, "store", "bolt", "bolt or etcd")
	rf.StringVar(&f.etcdEndpoints, "etcd-endpoints", "", "etcd client URLs")
	rf.StringVar(&f.etcdPrefix, "etcd-prefix", "/statemesh/", "key prefix in etcd")
	rf.StringVar(&id, "key-id", "", "ID of the new key (default kYYYYMMDDTHHMMSS)")
	cmd.AddCommand(newKEK, rotate)
	return cmd
}
