package birdcfg

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strings"
	"time"
)

// query sends one command to BIRD's control socket and returns the reply
// as birdc prints it (without reply codes), without running birdc: the
// agent asks for its status every second, and a birdc process each time
// (two per report) was a visible share of a 2-core machine running 20
// gateways. BIRD's protocol: a greeting "0001 BIRD 2.x ready."; each reply
// line is "DDDD-text" (more follows), " text" (same code as the line
// before) or "DDDD text" (the last); codes 8xxx and 9xxx are errors.
func query(ctx context.Context, socket, command string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return "", fmt.Errorf("connecting to bird (%s): %w", socket, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	rd := bufio.NewReader(c)
	if _, _, err := readReply(rd); err != nil {
		return "", fmt.Errorf("bird's greeting: %w", err)
	}
	if _, err := fmt.Fprintf(c, "%s\n", command); err != nil {
		return "", fmt.Errorf("sending %q to bird: %w", command, err)
	}
	text, code, err := readReply(rd)
	if err != nil {
		return "", fmt.Errorf("bird's reply to %q: %w", command, err)
	}
	if code[0] == '8' || code[0] == '9' {
		return text, fmt.Errorf("bird: %s", strings.TrimSpace(text))
	}
	return text, nil
}

// readReply reads reply lines up to the last one; it returns the text and
// the last line's code.
func readReply(rd *bufio.Reader) (text, code string, err error) {
	var b strings.Builder
	for {
		line, err := rd.ReadString('\n')
		if err != nil {
			return b.String(), "", err
		}
		line = strings.TrimRight(line, "\n")
		switch {
		case strings.HasPrefix(line, " "):
			b.WriteString(line[1:] + "\n")
		case len(line) >= 5 && isCode(line[:4]) && (line[4] == '-' || line[4] == ' '):
			if line[4] == ' ' && line[:4] == "0000" {
				return b.String(), line[:4], nil
			}
			b.WriteString(line[5:] + "\n")
			if line[4] == ' ' {
				return b.String(), line[:4], nil
			}
		default:
			return b.String(), "", fmt.Errorf("unexpected line %q", line)
		}
	}
}

func isCode(s string) bool {
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}
