package charttest

import (
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
)

// TestImageHoldsEveryCommand: no Docker engine runs where this is
// developed, so the Dockerfile is checked as text: its build stage runs
// `make build` (the build developers run), and its image copies every
// binary of ./cmd, which is what `make build` produces.
func TestImageHoldsEveryCommand(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	b, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	dockerfile := string(b)
	if !regexp.MustCompile(`(?m)^\s*make build BIN=/out\s*$`).MatchString(dockerfile) {
		t.Error("the Dockerfile's build stage does not run `make build BIN=/out`")
	}
	var copied []string
	for _, line := range strings.Split(dockerfile, "\n") {
		if strings.HasPrefix(line, "COPY --from=build ") {
			for _, f := range strings.Fields(line)[2:] {
				if name, ok := strings.CutPrefix(f, "/out/"); ok {
					copied = append(copied, name)
				}
			}
		}
	}
	entries, err := os.ReadDir(filepath.Join(root, "cmd"))
	if err != nil {
		t.Fatal(err)
	}
	var commands []string
	for _, e := range entries {
		if e.IsDir() {
			commands = append(commands, e.Name())
		}
	}
	slices.Sort(copied)
	if !slices.Equal(copied, commands) {
		t.Errorf("the image copies %v from the build; ./cmd has %v", copied, commands)
	}
}
