// Package swtpm provisions and runs software TPMs (Debian's swtpm) with EK
// certificates from a local CA of their own, for the lab and for tests:
// one CA per lab, one swtpm per host, each serving raw TPM 2.0 commands on
// a unix socket (reachable from every network namespace).
package swtpm

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// CA is a local certificate authority for EK certificates
// (swtpm_localca), kept in a directory of its own instead of the system's
// /var/lib/swtpm-localca.
type CA struct {
	Dir string
}

// NewCA prepares a local CA in dir (created on first use by swtpm_localca).
func NewCA(dir string) (*CA, error) {
	if err := os.MkdirAll(filepath.Join(dir, "ca"), 0o700); err != nil {
		return nil, err
	}
	files := map[string]string{
		"localca.conf":    fmt.Sprintf("statedir = %[1]s/ca\nsigningkey = %[1]s/ca/signkey.pem\nissuercert = %[1]s/ca/issuercert.pem\ncertserial = %[1]s/ca/certserial\n", dir),
		"localca.options": "--platform-manufacturer StateMesh\n--platform-version 1\n--platform-model lab\n",
		"setup.conf":      fmt.Sprintf("create_certs_tool = /usr/bin/swtpm_localca\ncreate_certs_tool_config = %[1]s/localca.conf\ncreate_certs_tool_options = %[1]s/localca.options\nactive_pcr_banks = sha256\n", dir),
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			return nil, err
		}
	}
	return &CA{Dir: dir}, nil
}

// RootPEM is the CA's root certificate (the accepted EK root).
func (c *CA) RootPEM() ([]byte, error) {
	return os.ReadFile(filepath.Join(c.Dir, "ca", "swtpm-localca-rootca-cert.pem"))
}

// IssuerPEM is the intermediate that signs EK certificates.
func (c *CA) IssuerPEM() ([]byte, error) {
	return os.ReadFile(filepath.Join(c.Dir, "ca", "issuercert.pem"))
}

// Pools returns the root and intermediate pools for verification.
func (c *CA) Pools() (roots, intermediates *x509.CertPool, err error) {
	roots, intermediates = x509.NewCertPool(), x509.NewCertPool()
	r, err := c.RootPEM()
	if err != nil {
		return nil, nil, err
	}
	i, err := c.IssuerPEM()
	if err != nil {
		return nil, nil, err
	}
	if !roots.AppendCertsFromPEM(r) || !intermediates.AppendCertsFromPEM(i) {
		return nil, nil, errors.New("local CA certificates are not PEM")
	}
	return roots, intermediates, nil
}

// Provision creates a TPM's state in stateDir with an EK and its
// certificate.
func (c *CA) Provision(stateDir string) error {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return err
	}
	out, err := exec.Command("swtpm_setup", "--tpm2", "--tpmstate", stateDir, "--create-ek-cert",
		"--config", filepath.Join(c.Dir, "setup.conf"), "--overwrite").CombinedOutput()
	if err != nil {
		return fmt.Errorf("swtpm_setup: %w: %s", err, out)
	}
	return nil
}

// TPM is a running swtpm.
type TPM struct {
	// URL is how the agent reaches it (--tpm).
	URL     string
	Socket  string
	Control string
	cmd     *exec.Cmd
	done    chan struct{}
}

// Start runs swtpm on stateDir, serving on sock (and sock.ctrl), in its
// own session with its output in logPath. It returns once the socket is
// there.
func Start(stateDir, sock, logPath string) (*TPM, error) {
	ctrl := sock + ".ctrl"
	os.Remove(sock)
	os.Remove(ctrl)
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, err
	}
	defer lf.Close()
	cmd := exec.Command("swtpm", "socket", "--tpm2", "--tpmstate", "dir="+stateDir,
		"--server", "type=unixio,path="+sock, "--ctrl", "type=unixio,path="+ctrl, "--flags", "startup-clear")
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting swtpm: %w", err)
	}
	t := &TPM{URL: "unix:" + sock, Socket: sock, Control: ctrl, cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); close(t.done) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			return t, nil
		}
		select {
		case <-t.done:
			return nil, fmt.Errorf("swtpm exited; see %s", logPath)
		default:
		}
		if time.Now().After(deadline) {
			t.Stop()
			return nil, fmt.Errorf("swtpm did not open %s in 10s", sock)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// StartNew provisions a new TPM state in dir/state with an EK certificate
// from c and runs swtpm on it, its socket and log in dir.
func (c *CA) StartNew(dir string) (*TPM, error) {
	state := filepath.Join(dir, "state")
	if err := c.Provision(state); err != nil {
		return nil, err
	}
	return Start(state, filepath.Join(dir, "tpm.sock"), filepath.Join(dir, "swtpm.log"))
}

// PID returns the swtpm process ID.
func (t *TPM) PID() int { return t.cmd.Process.Pid }

// Stop kills swtpm.
func (t *TPM) Stop() {
	t.cmd.Process.Kill()
	<-t.done
}

// PEMCerts decodes every certificate of a PEM bundle.
func PEMCerts(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return out, nil
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
}
