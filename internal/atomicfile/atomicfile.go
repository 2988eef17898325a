// Package atomicfile replaces files so that a crash or power loss leaves
// either the old content or the new one, never a mix or an empty file.
package atomicfile

import (
	"os"
	"path/filepath"
)

// WriteFile writes data to a temporary file beside path, flushes it to
// disk, renames it over path and flushes the directory, so the rename
// itself survives a power loss. On error path is unchanged and the
// temporary file is removed.
func WriteFile(path string, data []byte, mode os.FileMode) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// PrivateDir makes sure dir exists and only its owner can enter it (mode
// 0700): it holds keys. An existing directory with a looser mode is
// tightened; it reports the mode it had then (0 when it was already
// private or did not exist), so the caller can say so.
func PrivateDir(dir string) (loosened os.FileMode, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, err
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return 0, err
	}
	if fi.Mode().Perm()&0o077 == 0 {
		return 0, nil
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fi.Mode().Perm(), err
	}
	return fi.Mode().Perm(), nil
}
