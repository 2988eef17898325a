// Package tpm opens the node's TPM 2.0 from a URL-like name: a device
// (/dev/tpmrm0), a software TPM's socket server speaking raw TPM 2.0
// commands (swtpm://HOST:PORT, unix:PATH), or the Microsoft simulator
// protocol (mssim://HOST:PORT). It only moves bytes; package attest speaks
// TPM 2.0 over what it returns.
package tpm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpmutil"
	"github.com/google/go-tpm/tpmutil/mssim"
)

// None is the name that says the node has no TPM.
const None = "none"

// DefaultDevice is the kernel's TPM resource manager.
const DefaultDevice = "/dev/tpmrm0"

// Default returns DefaultDevice when it exists, else None.
func Default() string {
	if _, err := os.Stat(DefaultDevice); err == nil {
		return DefaultDevice
	}
	return None
}

// Open opens a TPM by name. The caller closes it.
func Open(name string) (io.ReadWriteCloser, error) {
	switch {
	case name == "" || name == None:
		return nil, errors.New("no TPM configured (--tpm none)")
	case strings.HasPrefix(name, "swtpm://"):
		addr := strings.TrimPrefix(name, "swtpm://")
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return nil, fmt.Errorf("connecting to swtpm at %s: %w", addr, err)
		}
		return flushStale(&framed{conn: c}), nil
	case strings.HasPrefix(name, "unix:"):
		path := strings.TrimPrefix(strings.TrimPrefix(name, "unix:"), "//")
		c, err := net.DialTimeout("unix", path, 5*time.Second)
		if err != nil {
			return nil, fmt.Errorf("connecting to TPM socket %s: %w", path, err)
		}
		return flushStale(&framed{conn: c}), nil
	case strings.HasPrefix(name, "mssim://"):
		addr := strings.TrimPrefix(name, "mssim://")
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, fmt.Errorf("mssim address %q: %w", addr, err)
		}
		var p int
		fmt.Sscan(port, &p)
		conn, err := mssim.Open(mssim.Config{CommandAddress: net.JoinHostPort(host, port), PlatformAddress: net.JoinHostPort(host, fmt.Sprint(p+1))})
		if err != nil {
			return nil, fmt.Errorf("connecting to the TPM simulator at %s: %w", addr, err)
		}
		return flushStale(conn), nil
	case strings.HasPrefix(name, "/"):
		rwc, err := tpmutil.OpenTPM(name)
		if err != nil {
			return nil, fmt.Errorf("opening TPM device %s: %w", name, err)
		}
		return rwc, nil
	}
	return nil, fmt.Errorf("TPM %q: use /dev/tpmrm0, swtpm://HOST:PORT, unix:PATH, mssim://HOST:PORT or none", name)
}

// flushStale flushes the keys and sessions a killed user left loaded in
// a TPM reached over a socket (swtpm, the simulator): without a resource
// manager they stay, and after a few the TPM has no room for another (an
// agent or controller killed mid-attestation would make every later one
// fail). Such a TPM serves one connection at a time, so nothing of a live
// user is flushed. A kernel resource manager (/dev/tpmrm0) does this by
// itself.
func flushStale(rw io.ReadWriteCloser) io.ReadWriteCloser {
	for _, ht := range []tpm2.HandleType{tpm2.HandleTypeTransient, tpm2.HandleTypeLoadedSession, tpm2.HandleTypeSavedSession} {
		vals, _, err := tpm2.GetCapability(rw, tpm2.CapabilityHandles, 64, uint32(ht)<<24)
		if err != nil {
			continue
		}
		for _, v := range vals {
			if h, ok := v.(tpmutil.Handle); ok {
				tpm2.FlushContext(rw, h)
			}
		}
	}
	return rw
}

// MaxResponse bounds one TPM response.
const MaxResponse = 1 << 16

// framed carries raw TPM 2.0 commands over a stream socket: each Read
// returns exactly one whole response (its size is in its header), which is
// what go-tpm's single-Read command loop expects.
type framed struct {
	mu   sync.Mutex
	conn net.Conn
	buf  []byte
}

func (f *framed) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.conn.SetDeadline(time.Now().Add(30 * time.Second))
	return f.conn.Write(p)
}

func (f *framed) Read(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.buf) == 0 {
		hdr := make([]byte, 10)
		if _, err := io.ReadFull(f.conn, hdr); err != nil {
			return 0, fmt.Errorf("reading TPM response header: %w", err)
		}
		size := binary.BigEndian.Uint32(hdr[2:6])
		if size < 10 || size > MaxResponse {
			return 0, fmt.Errorf("TPM response of %d bytes", size)
		}
		f.buf = make([]byte, size)
		copy(f.buf, hdr)
		if _, err := io.ReadFull(f.conn, f.buf[10:]); err != nil {
			return 0, fmt.Errorf("reading TPM response: %w", err)
		}
	}
	n := copy(p, f.buf)
	f.buf = f.buf[n:]
	return n, nil
}

func (f *framed) Close() error { return f.conn.Close() }
