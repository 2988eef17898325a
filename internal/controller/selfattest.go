package controller

import (
	"encoding/json"
	"sync"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/attest"
)

// TPM is the controller's own TPM (attest.Device): its identity, and
// evidence for a challenge bound to a TLS exporter and a binding value.
type TPM interface {
	Identity() ([]byte, error)
	Respond(challenge, exporter, bind []byte) ([]byte, error)
}

// selfTPM serializes the use of the controller's TPM (a software TPM
// serves one client at a time; a hardware one queues anyway).
var selfTPM sync.Mutex

// SelfIdentity returns the controller's TPM identity for mutual aTLS.
func (c *Controller) SelfIdentity() (json.RawMessage, error) {
	if c.cfg.TPM == nil {
		return nil, apiErr(api.CodeNotFound, "this controller runs without a TPM: agents cannot attest it (start it with --tpm)")
	}
	selfTPM.Lock()
	defer selfTPM.Unlock()
	id, err := c.cfg.TPM.Identity()
	if err != nil {
		c.log.Error("reading the controller's TPM identity", "err", err)
		return nil, apiErr(api.CodeUnavailable, "the controller's TPM does not answer")
	}
	return id, nil
}

// SelfEvidence answers an agent's challenge with the controller's TPM:
// activation of the credential the agent made for its EK and AK, and a
// quote bound to exporter (the agent's connection), the nonce and
// api.ControllerBinding.
func (c *Controller) SelfEvidence(challenge json.RawMessage, exporter []byte) (json.RawMessage, error) {
	if c.cfg.TPM == nil {
		return nil, apiErr(api.CodeNotFound, "this controller runs without a TPM: agents cannot attest it (start it with --tpm)")
	}
	var ch attest.Challenge
	if err := json.Unmarshal(challenge, &ch); err != nil {
		return nil, apiErr(api.CodeInvalidArgument, "challenge: %v", err)
	}
	if len(ch.Nonce) < 16 || len(ch.Nonce) > 64 || len(ch.CredBlob) == 0 || len(ch.PCRs) == 0 || len(ch.PCRs) > 24 {
		return nil, apiErr(api.CodeInvalidArgument, "challenge: want a 16-64 byte nonce, a credential and 1-24 PCRs")
	}
	for _, p := range ch.PCRs {
		if p < 0 || p > 23 {
			return nil, apiErr(api.CodeInvalidArgument, "challenge: PCR %d does not exist", p)
		}
	}
	selfTPM.Lock()
	defer selfTPM.Unlock()
	ev, err := c.cfg.TPM.Respond(challenge, exporter, api.ControllerBinding)
	if err != nil {
		// A credential made for another TPM fails activation: the
		// agent's verdict, not a controller fault.
		return nil, apiErr(api.CodeAttestationFailed, "the controller's TPM could not answer the challenge: %v", err)
	}
	return ev, nil
}
