package netmaker

import "errors"

// Sentinel errors; test with errors.Is.
var (
	// ErrUnavailable: Netmaker could not be reached or answered 5xx after
	// the retries. A pass stops at the first such error (the next pass
	// starts over), so a down server costs one call's retries, not one
	// per object.
	ErrUnavailable = errors.New("netmaker unavailable")

	// ErrInvalid: the Desired state cannot be written as asked (a network
	// name Netmaker refuses, two clusters with one key name, ...).
	ErrInvalid = errors.New("invalid desired state")

	// ErrRefused: a policy construct Netmaker cannot express (see
	// Mappings). MapPolicy returns a *RefusedError wrapping it.
	ErrRefused = errors.New("cannot be expressed in Netmaker")

	// ErrDrift: an object StateMesh created differs from the desired state
	// in a way Netmaker's API cannot change (a network's address range or
	// MTU). StateMesh reports it and leaves the object alone.
	ErrDrift = errors.New("cannot be changed through the Netmaker API")

	// ErrUngated: hosts can join a network StateMesh did not create
	// without waiting as pending hosts (it has auto_join on), so admission
	// is not gated on attestation there. (Device approval off on the
	// server is not an error: in StateMesh's own networks unattested
	// members are then removed each pass.)
	ErrUngated = errors.New("admission is not gated on attestation")

	// ErrCredential: the server could not find the calling user. Netmaker
	// looks up the caller to create ACL policies and tags, and the master
	// key's user (masteradministrator) is not in its database: those
	// calls need a super-admin user's access token.
	ErrCredential = errors.New("the Netmaker credential cannot do this: give a super-admin user's access token, not the master key (docs/netmaker.md)")

	// ErrNotMarked: an object StateMesh would create exists without its
	// mark (created by someone else); StateMesh leaves it alone.
	ErrNotMarked = errors.New("exists but was not created by StateMesh")
)
