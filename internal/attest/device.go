package attest

import (
	"encoding/json"
	"fmt"

	"github.com/statemesh/statemesh/internal/tpm"
)

// Device answers attestation challenges with the TPM at URL (a device
// path, swtpm://, unix:, mssim://; see package tpm). It opens the TPM for
// each operation: the EK and AK live at persistent handles, so every open
// finds the same keys, and the TPM is never held between operations (a
// software TPM serves one client at a time). Agents and a controller with
// a TPM (mutual aTLS) use it.
type Device struct {
	URL string
}

func (d Device) with(fn func(a *Attester) error) error {
	rw, err := tpm.Open(d.URL)
	if err != nil {
		return err
	}
	a, err := NewAttester(rw)
	if err != nil {
		rw.Close()
		return err
	}
	defer a.Close()
	return fn(a)
}

// Identity returns the TPM's identity (Identity as JSON).
func (d Device) Identity() ([]byte, error) {
	var out []byte
	err := d.with(func(a *Attester) error {
		id, err := a.Identity()
		out = Encode(id)
		return err
	})
	return out, err
}

// Respond answers a challenge (Challenge as JSON) with evidence (Evidence
// as JSON) bound to exporter and bind.
func (d Device) Respond(challenge, exporter, bind []byte) ([]byte, error) {
	var ch Challenge
	if err := json.Unmarshal(challenge, &ch); err != nil {
		return nil, fmt.Errorf("decoding the challenge: %w", err)
	}
	var out []byte
	err := d.with(func(a *Attester) error {
		ev, err := a.Respond(ch, exporter, bind, nil)
		out = Encode(ev)
		return err
	})
	return out, err
}

// Quote quotes pcrs with extraData (Quote as JSON), without activation.
func (d Device) Quote(pcrs []int, extraData []byte) ([]byte, error) {
	var out []byte
	err := d.with(func(a *Attester) error {
		q, err := a.Quote(pcrs, extraData, nil)
		out = Encode(q)
		return err
	})
	return out, err
}
