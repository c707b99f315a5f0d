package tests

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDependencyDirection keeps the layers of docs/architecture.md: target
// knows storage only through volume/block; volume knows nothing of the
// network or the target; only volume/catalog imports bbolt.
func TestDependencyDirection(t *testing.T) {
	rules := []struct {
		pkg       string
		forbidden []string
	}{
		{"tandem.io/tandem/target/...", []string{"tandem.io/tandem/volume/catalog", "tandem.io/tandem/appliance", "go.etcd.io/bbolt"}},
		{"tandem.io/tandem/volume/...", []string{"tandem.io/tandem/target", "tandem.io/tandem/appliance", "net/http"}},
		{"tandem.io/tandem/volume/block", []string{"tandem.io/tandem/volume/catalog", "go.etcd.io/bbolt", "golang.org/x/sys"}},
	}
	for _, r := range rules {
		out, err := exec.Command("go", "list", "-deps", r.pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list %s: %v\n%s", r.pkg, err, out)
		}
		for _, dep := range strings.Fields(string(out)) {
			for _, f := range r.forbidden {
				if dep == f || strings.HasPrefix(dep, f+"/") {
					t.Errorf("%s depends on %s", r.pkg, dep)
				}
			}
		}
	}
	out, _ := exec.Command("go", "list", "-f", `{{.ImportPath}} {{join .Imports " "}}`, "../...").CombinedOutput()
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] == "tandem.io/tandem/volume/catalog" {
			continue
		}
		for _, imp := range f[1:] {
			if imp == "go.etcd.io/bbolt" {
				t.Errorf("%s imports bbolt; only volume/catalog may", f[0])
			}
		}
	}
}
