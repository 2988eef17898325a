// Package netmaker drives a Netmaker server (https://netmaker.io) towards
// StateMesh's state through Netmaker's REST API, so that Netmaker keeps
// managing WireGuard on hosts that run netclient while StateMesh decides
// who may join, who must leave and what may talk to what.
//
// It owns three things:
//
//   - Client: typed calls for the Netmaker operations StateMesh needs
//     (Operations lists them; each exists in Netmaker's swagger.yaml),
//     with a bearer token that never prints, per-call timeouts, and
//     retries with capped exponential backoff and jitter for 5xx answers
//     and transport errors only.
//   - Reconciler: Reconcile(ctx, Desired) makes one idempotent pass
//     (networks per region, enrollment keys per cluster, attestation-gated
//     approval of pending hosts, removal of quarantined or removed nodes'
//     hosts with the delay measured, segment tags and ACL policies,
//     regional gateways); Detach deletes what StateMesh created and
//     nothing else.
//   - The policy mapping (Mappings, MapPolicy): what of a StateMesh policy
//     Netmaker can express exactly, approximately, or not at all (refused
//     with an error, never dropped).
//
// Invariant: StateMesh changes and deletes only objects that carry its
// marks (marks.go). Everything else in the Netmaker server is read, used
// where the caller maps to it, and reported, never modified.
//
// The contract is Netmaker's swagger.yaml, kept as test data in
// contract/testdata (source commit and licence in SOURCE.md); package contract
// checks requests against it and package nmtest is a contract-checking
// Netmaker for tests. docs/netmaker.md is the operator's guide.
package netmaker
