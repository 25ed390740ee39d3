package manifest

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Stdin is the path that names standard input.
const Stdin = "-"

// Extensions are the file name extensions read in a directory.
var extensions = []string{".yaml", ".yml", ".json"}

// ReadPaths reads the manifests at paths: files, directories (every
// .yaml, .yml and .json file below them, in lexical order, skipping
// directories whose names start with "."), and "-" for stdin, read once.
// The objects come in the order of paths, then of files, then of
// documents.
func ReadPaths(paths []string, stdin io.Reader) (*Stream, error) {
	all := &Stream{}
	readStdin := false
	for _, p := range paths {
		if p == Stdin {
			if readStdin {
				return nil, &Error{File: p, Err: fmt.Errorf("standard input named twice")}
			}
			readStdin = true
			s, err := Read(p, stdin)
			if err != nil {
				return nil, err
			}
			if err := all.join(p, s); err != nil {
				return nil, err
			}
			continue
		}
		files, err := expand(p)
		if err != nil {
			return nil, err
		}
		for _, f := range files {
			s, err := readFile(f)
			if err != nil {
				return nil, err
			}
			if err := all.join(f, s); err != nil {
				return nil, err
			}
		}
	}
	return all, nil
}

func (all *Stream) join(file string, s *Stream) error {
	if len(all.Objects)+len(s.Objects) > MaxObjects {
		return &Error{File: file, Err: fmt.Errorf("more than %d objects in all", MaxObjects)}
	}
	all.Objects = append(all.Objects, s.Objects...)
	all.Skipped = append(all.Skipped, s.Skipped...)
	return nil
}

func readFile(path string) (*Stream, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, &Error{File: path, Err: err}
	}
	defer f.Close()
	return Read(path, f)
}

// expand lists the manifest files a path names.
func expand(path string) ([]string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, &Error{File: path, Err: err}
	}
	if !st.IsDir() {
		return []string{path}, nil
	}
	var files []string
	err = filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if p != path && strings.HasPrefix(d.Name(), ".") {
				return filepath.SkipDir
			}
			return nil
		}
		if slices.Contains(extensions, strings.ToLower(filepath.Ext(p))) && (d.Type().IsRegular() || d.Type()&fs.ModeSymlink != 0) {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		return nil, &Error{File: path, Err: err}
	}
	slices.Sort(files)
	if len(files) == 0 {
		return nil, &Error{File: path, Err: fmt.Errorf("no .yaml, .yml or .json files in this directory")}
	}
	return files, nil
}
