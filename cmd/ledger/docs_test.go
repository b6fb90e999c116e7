package main

import (
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode"
)

// repoRoot is the repository root, seen from this package's directory.
const repoRoot = "../.."

var (
	// envName matches the names of the ledger's environment variables.
	envName = regexp.MustCompile(`\b(?:(?:LEDGER|STRIPE)_[A-Z0-9_]*[A-Z0-9]|DATABASE_URL)\b`)
	// envLiteral matches a Go string literal that is exactly such a name.
	envLiteral = regexp.MustCompile(`"((?:LEDGER|STRIPE)_[A-Z0-9_]*[A-Z0-9]|DATABASE_URL)"`)
	// ledgerIdent matches ledger_* names, with the "(" of a function call.
	// Those checked are metrics (by their unit suffix) and SQL functions
	// (ledger_horizon()); other ledger_* words may be examples, such as role names.
	ledgerIdent = regexp.MustCompile(`\bledger_[a-z0-9_]*[a-z0-9]\b\(?`)
	metricName  = regexp.MustCompile(`_(?:total|seconds|bytes|bucket|sum|count|ratio|info)$`)
)

// TestDocsNameWhatTheCodeHas keeps README.md and docs/*.md true to the code:
// every environment variable they name is a string literal of the Go code
// (or set by the Makefile), every ledger_* metric and SQL function they name
// occurs in the Go or SQL sources, and every environment variable name the
// Go code spells out is documented.
func TestDocsNameWhatTheCodeHas(t *testing.T) {
	t.Parallel()
	docs := readDocs(t)
	goSrc, goTestSrc, sqlSrc := readSources(t)
	makefile, err := os.ReadFile(filepath.Join(repoRoot, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	allGo := goSrc + goTestSrc
	for _, name := range docNames(docs) {
		switch {
		case envName.MatchString(name):
			if !strings.Contains(allGo, `"`+name+`"`) && !strings.Contains(string(makefile), name+" ?=") {
				t.Errorf("the docs name environment variable %s, which no Go code reads and the Makefile does not set", name)
			}
		default:
			if !strings.Contains(allGo+sqlSrc, name) && !strings.Contains(allGo+sqlSrc, histogramBase(name)) {
				t.Errorf("the docs name %s, which no Go or SQL source of the repository defines", name)
			}
		}
	}
	documented := strings.Join(slices.Collect(maps.Values(docs)), "\n")
	for _, m := range envLiteral.FindAllStringSubmatch(goSrc, -1) {
		if !strings.Contains(documented, m[1]) {
			t.Errorf("the code spells out environment variable %s, which neither README.md nor docs/ documents", m[1])
		}
	}
}

// mdLink matches a Markdown link's target: a path, an anchor, or both.
var mdLink = regexp.MustCompile(`\]\(([^)\s]*)\)`)

// TestDocsLinksResolve checks that every link of README.md and docs/*.md
// that is not a URL names a file of the repository (so it works in a clone)
// and, with #anchor, a heading of that file.
func TestDocsLinksResolve(t *testing.T) {
	t.Parallel()
	docs := readDocs(t)
	for path, text := range docs {
		for _, m := range mdLink.FindAllStringSubmatch(text, -1) {
			target := m[1]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			file, anchor, _ := strings.Cut(target, "#")
			linked := path
			if file != "" {
				linked = filepath.Join(filepath.Dir(path), file)
			}
			rel, err := filepath.Rel(repoRoot, linked)
			if err != nil || strings.HasPrefix(rel, "..") {
				t.Errorf("%s links %q, outside the repository", path, target)
				continue
			}
			if _, err := os.Stat(linked); err != nil {
				t.Errorf("%s links %q: %v", path, target, err)
				continue
			}
			if anchor == "" {
				continue
			}
			b, err := os.ReadFile(linked)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Contains(headingAnchors(string(b)), anchor) {
				t.Errorf("%s links %q: %s has no heading with that anchor", path, target, rel)
			}
		}
	}
}

// headingAnchors returns the anchors GitHub gives the Markdown headings of
// text: lower case, spaces to hyphens, punctuation other than - and _ dropped.
func headingAnchors(text string) []string {
	var anchors []string
	inFence := false
	for line := range strings.Lines(text) {
		line = strings.TrimRight(line, "\n")
		if strings.HasPrefix(line, "```") {
			inFence = !inFence
		}
		if inFence || !strings.HasPrefix(line, "#") {
			continue
		}
		title := strings.TrimSpace(strings.TrimLeft(line, "#"))
		var b strings.Builder
		for _, r := range strings.ToLower(title) {
			switch {
			case r == ' ':
				b.WriteRune('-')
			case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
				b.WriteRune(r)
			}
		}
		anchors = append(anchors, b.String())
	}
	return anchors
}

// readDocs returns README.md and docs/*.md by path.
func readDocs(t *testing.T) map[string]string {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(repoRoot, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	paths = append(paths, filepath.Join(repoRoot, "README.md"))
	docs := map[string]string{}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		docs[p] = string(b)
	}
	return docs
}

// readSources returns the concatenated non-test Go, test Go and SQL files of
// the repository, leaving out this file.
func readSources(t *testing.T) (goSrc, goTestSrc, sqlSrc string) {
	t.Helper()
	var src, tests, sql strings.Builder
	err := filepath.WalkDir(repoRoot, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if name := d.Name(); path != repoRoot && (strings.HasPrefix(name, ".") || name == "bin" || name == "testdata") {
				return filepath.SkipDir
			}
			return nil
		}
		var to *strings.Builder
		switch {
		case path == filepath.Join(repoRoot, "cmd", "ledger", "docs_test.go"):
			return nil
		case strings.HasSuffix(path, "_test.go"):
			to = &tests
		case strings.HasSuffix(path, ".go"):
			to = &src
		case strings.HasSuffix(path, ".sql"):
			to = &sql
		default:
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		to.Write(b)
		to.WriteByte('\n')
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return src.String(), tests.String(), sql.String()
}

// docNames returns the environment variable and ledger_* names the docs
// mention, sorted and without repeats.
func docNames(docs map[string]string) []string {
	var names []string
	for _, text := range docs {
		names = append(names, envName.FindAllString(text, -1)...)
		for _, name := range ledgerIdent.FindAllString(text, -1) {
			if fn, ok := strings.CutSuffix(name, "("); ok || metricName.MatchString(name) {
				names = append(names, fn)
			}
		}
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// histogramBase is a histogram's name without the suffix of one of its
// series (_bucket, _sum, _count), or name itself.
func histogramBase(name string) string {
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok {
			return base
		}
	}
	return name
}
