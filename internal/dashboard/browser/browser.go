// Package browser drives a headless Chromium for the dashboard's tests:
// load a page, let its script run, and return the DOM or a screenshot.
package browser

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"time"
)

// Find returns the Chromium binary (Debian: chromium).
func Find() (string, error) {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("no chromium on PATH (Debian: apt-get install chromium)")
}

// Options tune a page load.
type Options struct {
	// Wait is the virtual time the page's script gets before the DOM is
	// taken (default 6 s; network waits do not count).
	Wait time.Duration
	// Width and Height size the window (default 1600 × 1000).
	Width, Height int
}

func args(o Options, extra ...string) []string {
	if o.Wait == 0 {
		o.Wait = 6 * time.Second
	}
	if o.Width == 0 {
		o.Width, o.Height = 1600, 1000
	}
	a := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
		"--disable-extensions", "--hide-scrollbars", "--ignore-certificate-errors",
		"--virtual-time-budget=" + strconv.FormatInt(o.Wait.Milliseconds(), 10),
		fmt.Sprintf("--window-size=%d,%d", o.Width, o.Height)}
	return append(a, extra...)
}

func run(ctx context.Context, bin string, argv []string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	home, err := os.MkdirTemp("", "statemesh-chromium-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(home)
	cmd := exec.CommandContext(ctx, bin, append(argv, "--user-data-dir="+home)...)
	cmd.Env = append(os.Environ(), "HOME="+home)
	var stderr []byte
	out, err := cmd.Output()
	if ee, ok := err.(*exec.ExitError); ok {
		stderr = ee.Stderr
	}
	if err != nil {
		return nil, fmt.Errorf("chromium: %w\n%s", err, stderr)
	}
	return out, nil
}

// DOM loads url and returns the document after the script ran.
func DOM(ctx context.Context, bin, url string, o Options) (string, error) {
	out, err := run(ctx, bin, args(o, "--dump-dom", url))
	return string(out), err
}

// Screenshot loads url and writes a PNG of the window to file.
func Screenshot(ctx context.Context, bin, url, file string, o Options) error {
	if _, err := run(ctx, bin, args(o, "--screenshot="+file, url)); err != nil {
		return err
	}
	st, err := os.Stat(file)
	if err != nil {
		return fmt.Errorf("chromium wrote no screenshot: %w", err)
	}
	if st.Size() == 0 {
		return fmt.Errorf("chromium wrote an empty screenshot")
	}
	return nil
}
