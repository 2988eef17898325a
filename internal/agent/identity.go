package agent

// The node's identity: its WireGuard key (made on the node, sealed to its
// TPM or a keyring), its enrollment (kept across retries by the key of its
// first request), and the renewal of its certificate.

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/apiclient"
	"github.com/statemesh/statemesh/internal/atomicfile"
	"github.com/statemesh/statemesh/internal/netmap"
)

// loadOrCreateKey loads the node's WireGuard private key, or generates it
// on the node. With a TPM it is sealed to the TPM; with a keyring
// (--kek-file) it is encrypted with it; otherwise it is a 0600 file. The
// private key never leaves the node.
func (a *Agent) loadOrCreateKey() (netmap.Key, error) {
	dir := a.cfg.DataDir
	plain := filepath.Join(dir, KeyFile)
	if b, err := os.ReadFile(plain); err == nil {
		k, err := netmap.ParseKey(string(trimSpace(b)))
		if err != nil {
			return k, fmt.Errorf("%s: %w", plain, err)
		}
		return k, nil
	}
	if t := a.attester(); t != nil {
		path := filepath.Join(dir, SealedKeyFile)
		if blob, err := os.ReadFile(path); err == nil {
			b, err := unsealFromTPM(t.URL, blob)
			if err != nil {
				return netmap.Key{}, err
			}
			return netmap.ParseKey(string(b))
		}
		k, err := netmap.GeneratePrivateKey()
		if err != nil {
			return k, err
		}
		blob, err := sealToTPM(t.URL, []byte(k.String()))
		if err != nil {
			return k, err
		}
		return k, atomicfile.WriteFile(path, blob, 0o600)
	}
	if a.cfg.Keyring != nil {
		path := filepath.Join(dir, KeyFile+".enc")
		if blob, err := os.ReadFile(path); err == nil {
			b, err := a.cfg.Keyring.Open(KeyFile, blob)
			if err != nil {
				return netmap.Key{}, fmt.Errorf("%s: %w", path, err)
			}
			return netmap.ParseKey(string(b))
		}
		k, err := netmap.GeneratePrivateKey()
		if err != nil {
			return k, err
		}
		blob, err := a.cfg.Keyring.Seal(KeyFile, []byte(k.String()))
		if err != nil {
			return k, err
		}
		return k, atomicfile.WriteFile(path, blob, 0o600)
	}
	k, err := netmap.GeneratePrivateKey()
	if err != nil {
		return k, err
	}
	return k, atomicfile.WriteFile(plain, []byte(k.String()+"\n"), 0o600)
}

// retryWait is how long to wait before retrying after err: base, or what
// the controller's Retry-After asks for when that is longer, plus up to a
// fifth more at random so that many agents do not come back at once.
func retryWait(base time.Duration, err error) time.Duration {
	d := max(base, apiclient.RetryAfter(err))
	return d + rand.N(d/5+1)
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == ' ' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

func (a *Agent) identity(ctx context.Context) (*apiclient.Identity, error) {
	path := filepath.Join(a.cfg.DataDir, IdentityFile)
	if b, err := os.ReadFile(path); err == nil {
		var id apiclient.Identity
		if err := json.Unmarshal(b, &id); err != nil {
			return nil, fmt.Errorf("%s is corrupt (%v); remove it and enroll again with a new token", path, err)
		}
		if a.cfg.Controller != "" && id.Server != a.cfg.Controller {
			id.Server = a.cfg.Controller
		}
		return &id, nil
	}
	if a.cfg.Token == "" {
		return nil, fmt.Errorf("not enrolled yet (no %s): give --token", path)
	}
	if a.cfg.Controller == "" {
		return nil, errors.New("give --controller https://HOST:PORT")
	}
	endpoint := a.cfg.Endpoint
	if endpoint == "" {
		ip, err := localAddrTowards(a.cfg.Controller)
		if err != nil {
			return nil, fmt.Errorf("finding this node's endpoint (give --endpoint): %w", err)
		}
		endpoint = netip.AddrPortFrom(ip, uint16(a.cfg.ListenPort)).String()
	}
	var id *apiclient.Identity
	var err error
	var att apiclient.Attester
	if t := a.attester(); t != nil {
		att = t
	}
	// The certificate key is kept until the identity is saved: a retry
	// after a lost answer (or a crash) must sign with the key the
	// controller enrolled, which is its proof that it is the same node.
	keyPath := filepath.Join(a.cfg.DataDir, EnrollKeyFile)
	keyPEM, err := pendingEnrollKey(keyPath)
	if err != nil {
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		if err = a.verifyBeforeEnroll(ctx); err != nil {
			var ae *api.Error
			if errors.As(err, &ae) && ae.Code == api.CodeAttestationFailed || attempt >= 30 {
				break
			}
			a.log.Info("controller not reachable to attest it; retrying", "err", err)
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(retryWait(time.Second, err)):
			}
			continue
		}
		req := api.EnrollRequest{
			Name: a.cfg.Name, Role: a.cfg.Role, PublicKey: a.pub,
			Endpoint: endpoint, PublicEndpoint: a.cfg.PublicEndpoint, Labels: a.cfg.Labels,
		}
		id, err = apiclient.EnrollWithKey(ctx, a.cfg.Controller, a.cfg.Token, req, att, keyPEM)
		var ae *api.Error
		if att != nil && errors.As(err, &ae) && ae.Code == api.CodeInvalidArgument && strings.Contains(ae.Message, "attestation is not configured") {
			a.log.Warn("the mesh does not use attestation; enrolling without TPM evidence (as weak)")
			att = nil
			id, err = apiclient.EnrollWithKey(ctx, a.cfg.Controller, a.cfg.Token, req, nil, keyPEM)
		}
		if err == nil || (errors.As(err, &ae) && ae.Code != api.CodeUnavailable) || attempt >= 30 {
			break
		}
		// The controller may not be up yet, or asks to come back later.
		wait := retryWait(time.Second, err)
		a.log.Info("controller not reachable; retrying enrollment", "err", err, "in", wait.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(wait):
		}
	}
	if err != nil {
		return nil, fmt.Errorf("enrolling: %w", err)
	}
	b, _ := json.MarshalIndent(id, "", "  ")
	if err := atomicfile.WriteFile(path, b, 0o600); err != nil {
		return nil, err
	}
	os.Remove(keyPath) // the identity holds it now
	a.log.Info("enrolled", "node", id.Node.Name, "region", id.Node.Region, "cluster", id.Node.Cluster, "overlay", id.Node.OverlayIPv4, "class", id.Node.Class)
	if id.Node.Class != "strong" && att != nil {
		a.log.Warn("enrolled as weak although a TPM is configured")
	}
	return id, nil
}

// pendingEnrollKey returns the certificate key of an enrollment in
// progress, made and saved (0600) on the first attempt.
func pendingEnrollKey(path string) (string, error) {
	if b, err := os.ReadFile(path); err == nil {
		return string(b), nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	k, err := apiclient.NewNodeKey()
	if err != nil {
		return "", err
	}
	return k, atomicfile.WriteFile(path, []byte(k), 0o600)
}

// localAddrTowards returns the local address used to reach the URL's host.
func localAddrTowards(server string) (netip.Addr, error) {
	u, err := url.Parse(server)
	if err != nil {
		return netip.Addr{}, err
	}
	c, err := net.Dial("udp", net.JoinHostPort(u.Hostname(), "9"))
	if err != nil {
		return netip.Addr{}, err
	}
	defer c.Close()
	ap := c.LocalAddr().(*net.UDPAddr).AddrPort()
	return ap.Addr().Unmap(), nil
}

// renewLoop renews the node's certificate when two thirds of its lifetime
// have passed, and swaps the client to it.
func (a *Agent) renewLoop(ctx context.Context) {
	for {
		a.mu.Lock()
		id := a.id
		a.mu.Unlock()
		exp, err := id.Expiry()
		if err != nil {
			a.log.Error("reading the node certificate", "err", err)
			return
		}
		blk, _ := pem.Decode([]byte(id.CertPEM))
		issued := exp.Add(-24 * time.Hour)
		if c, err := x509.ParseCertificate(blk.Bytes); err == nil {
			issued = c.NotBefore
		}
		wait := time.Until(issued.Add(exp.Sub(issued) * 2 / 3))
		if wait < time.Second {
			wait = time.Second
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		renewed, err := id.Renew(rctx)
		cancel()
		if err != nil {
			a.log.Warn("renewing the node certificate failed; retrying", "err", err, "expires", exp)
			select {
			case <-ctx.Done():
				return
			case <-time.After(30 * time.Second):
			}
			continue
		}
		b, _ := json.MarshalIndent(renewed, "", "  ")
		if err := atomicfile.WriteFile(filepath.Join(a.cfg.DataDir, IdentityFile), b, 0o600); err != nil {
			a.log.Error("saving the renewed identity", "err", err)
		}
		cli, err := renewed.Client()
		if err != nil {
			a.log.Error("using the renewed certificate", "err", err)
			continue
		}
		a.mu.Lock()
		a.id, a.cli = renewed, cli
		a.mu.Unlock()
		a.log.Info("node certificate renewed")
	}
}
