package review

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"

	"go.yaml.in/yaml/v3"
)

// Revoke removes the exception of namespace named name from the file, as
// Grant adds one: under the lock, after re-reading the file (so edits by
// hand are kept; a file that does not validate is not rewritten), and
// replacing it atomically. The error wraps ErrExceptionGone when the file
// holds no such exception.
func (f *ExceptionFile) Revoke(ctx context.Context, namespace, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	unlock, err := lockFile(ctx, f.path+".lock")
	if err != nil {
		return fmt.Errorf("exceptions file: %w", err)
	}
	defer unlock()
	raw, err := os.ReadFile(f.path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("exceptions file: %w", err)
	}
	list := f.list
	if string(raw) != string(f.raw) {
		if list, _, err = parseExceptionFile(raw); err != nil {
			return fmt.Errorf("exceptions file %s (fix it before revoking): %w", f.path, err)
		}
	}
	next := exceptionFile{APIVersion: ExceptionFileVersion, Kind: ExceptionFileKind}
	found := false
	for _, e := range list.Exceptions {
		if e.Namespace == namespace && e.Name == name {
			found = true
			continue
		}
		next.Exceptions = append(next.Exceptions, e)
	}
	if !found {
		return fmt.Errorf("exception %s/%s is not in %s: %w", namespace, name, f.path, ErrExceptionGone)
	}
	c, err := compileFile(next)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	buf.WriteString("# Exceptions granted in buildguard's review UI (docs/review.md). Edits by hand are kept.\n")
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(next); err != nil {
		return err
	}
	if err := enc.Close(); err != nil {
		return err
	}
	out := buf.Bytes()
	if err := writeAtomic(f.path, out); err != nil {
		return fmt.Errorf("exceptions file: %w", err)
	}
	f.raw, f.list = out, next
	f.setCompiled(c)
	return nil
}
