package attest

import (
	"bytes"
	"crypto/sha256"
	"fmt"
)

// EventTypes are the measurements StateMesh's event log may carry. Any other
// type is refused: a verifier must not accept what it cannot interpret.
var EventTypes = map[string]bool{
	"firmware":        true,
	"bootloader":      true,
	"kernel":          true,
	"initrd":          true,
	"cmdline":         true,
	"statemesh-agent": true,
	"separator":       true,
}

// Replay extends every event's digest into a zeroed SHA-256 bank and
// checks the result against the quoted PCR values of every PCR the log
// touches.
func Replay(log []Event, quoted map[int][]byte) error {
	bank := map[int][]byte{}
	for i, e := range log {
		if !EventTypes[e.Type] {
			return fmt.Errorf("%w: event %d has type %q", ErrUnknownEventType, i, e.Type)
		}
		if e.PCR < 0 || e.PCR > MaxPCR || len(e.Digest) != sha256.Size {
			return fmt.Errorf("%w: event %d (PCR %d, %d-byte digest)", ErrMalformed, i, e.PCR, len(e.Digest))
		}
		cur, ok := bank[e.PCR]
		if !ok {
			cur = make([]byte, sha256.Size)
		}
		h := sha256.New()
		h.Write(cur)
		h.Write(e.Digest)
		bank[e.PCR] = h.Sum(nil)
	}
	for pcr, v := range bank {
		q, ok := quoted[pcr]
		if !ok {
			return fmt.Errorf("%w: the log measures PCR %d, which was not quoted", ErrEventLogReplay, pcr)
		}
		if !bytes.Equal(q, v) {
			return fmt.Errorf("%w: PCR %d replays to %x, quoted %x", ErrEventLogReplay, pcr, v, q)
		}
	}
	return nil
}

// Measure returns an event for data, for the agent's own measurements.
func Measure(pcr int, typ string, data []byte, description string) Event {
	d := sha256.Sum256(data)
	return Event{PCR: pcr, Type: typ, Digest: d[:], Data: description}
}
