package attest

import (
	"bytes"
	"crypto/sha256"
	"slices"
)

// Batched quotes (mutual aTLS): the controller answers many agents'
// nonces with one quote whose extraData is BatchDigest of their bindings;
// each agent finds its own binding in the batch (InBatch) and checks the
// quote against the digest. Both ends use these, so they live here.

// BatchDigest is the extraData of a batched quote: SHA-256 over the
// bindings it covers, in order.
func BatchDigest(batch [][]byte) []byte {
	h := sha256.New()
	for _, b := range batch {
		h.Write(b)
	}
	return h.Sum(nil)
}

// InBatch reports whether binding is one of batch's.
func InBatch(batch [][]byte, binding []byte) bool {
	return slices.ContainsFunc(batch, func(b []byte) bool { return bytes.Equal(b, binding) })
}
