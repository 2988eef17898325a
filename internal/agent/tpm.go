package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/go-tpm-tools/client"
	pb "github.com/google/go-tpm-tools/proto/tpm"
	"golang.zx2c4.com/wireguard/wgctrl"
	"google.golang.org/protobuf/proto"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/attest"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/tpm"
)

// tpmAttester answers challenges with the node's TPM.
type tpmAttester = attest.Device

// attester returns the node's TPM attester, or nil without a TPM.
func (a *Agent) attester() *tpmAttester {
	if a.cfg.TPM == "" || a.cfg.TPM == tpm.None {
		return nil
	}
	return &tpmAttester{URL: a.cfg.TPM}
}

// reattestLoop re-attests a strong node on the controller's interval. A
// failure is the controller's to act on (quarantine or downgrade); the
// agent only reports and keeps trying.
func (a *Agent) reattestLoop(ctx context.Context) {
	att := a.attester()
	if att == nil || a.id.Node.Class != "strong" {
		return
	}
	interval := a.id.ReattestInterval
	if interval <= 0 {
		interval = 30 * time.Second
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := a.reattest(cctx, att, &interval)
		cancel()
		if err != nil && ctx.Err() == nil {
			var ae *api.Error
			if errors.As(err, &ae) && ae.Code == api.CodeAttestationFailed {
				a.log.Error("re-attestation refused by the controller", "reason", ae.Message)
			} else {
				a.log.Warn("re-attestation did not complete", "err", err)
			}
		}
	}
}

func (a *Agent) reattest(ctx context.Context, att *tpmAttester, interval *time.Duration) error {
	ch, err := a.client().NodeChallenge(ctx)
	if err != nil {
		return err
	}
	if ch.ReattestInterval > 0 {
		*interval = time.Duration(ch.ReattestInterval) * time.Second
	}
	pub := a.pub
	return a.client().Reattest(ctx, func(exp []byte) ([]byte, error) {
		return att.Respond(ch.Challenge, exp, pub[:])
	})
}

// SealedKeyFile holds the WireGuard private key sealed to the node's TPM
// (strong nodes): only this TPM can open it.
const SealedKeyFile = "wireguard.key.sealed"

// sealToTPM seals data to the TPM's storage root key.
func sealToTPM(url string, data []byte) ([]byte, error) {
	rw, err := tpm.Open(url)
	if err != nil {
		return nil, err
	}
	defer rw.Close()
	srk, err := client.StorageRootKeyECC(rw)
	if err != nil {
		return nil, fmt.Errorf("loading the storage root key: %w", err)
	}
	defer srk.Close()
	sb, err := srk.Seal(data, client.SealOpts{})
	if err != nil {
		return nil, fmt.Errorf("sealing to the TPM: %w", err)
	}
	return proto.Marshal(sb)
}

// unsealFromTPM opens what sealToTPM sealed.
func unsealFromTPM(url string, blob []byte) ([]byte, error) {
	var sb pb.SealedBytes
	if err := proto.Unmarshal(blob, &sb); err != nil {
		return nil, fmt.Errorf("sealed key file is corrupt: %w", err)
	}
	rw, err := tpm.Open(url)
	if err != nil {
		return nil, err
	}
	defer rw.Close()
	srk, err := client.StorageRootKeyECC(rw)
	if err != nil {
		return nil, fmt.Errorf("loading the storage root key: %w", err)
	}
	defer srk.Close()
	out, err := srk.Unseal(&sb, client.UnsealOpts{})
	if err != nil {
		return nil, fmt.Errorf("unsealing with the TPM (another TPM, or its state was reset?): %w", err)
	}
	return out, nil
}

// interfaceKey reads the public key of an existing WireGuard interface
// (netclient's, in attest-only mode).
func interfaceKey(iface string) (netmap.Key, error) {
	if iface == "" {
		return netmap.Key{}, errors.New("attest-only needs the WireGuard interface whose key to attest (--wireguard-key-from, netclient's is usually netmaker)")
	}
	c, err := wgctrl.New()
	if err != nil {
		return netmap.Key{}, err
	}
	defer c.Close()
	d, err := c.Device(iface)
	if err != nil {
		return netmap.Key{}, fmt.Errorf("reading the WireGuard key of %s: %w", iface, err)
	}
	return netmap.Key(d.PublicKey), nil
}
