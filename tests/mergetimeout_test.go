package tests

import (
	"context"
	"net/http"
	"testing"
	"time"

	"tandem.io/tandem/appliance/admin"
	"tandem.io/tandem/volume/vfs"
)

// A merge runs for the store, not for the admin request: a client that
// gives up (the CLI's 60 s timeout; here 1 s, the merge ~5 s) does not stop
// it, and the snapshot is gone once it ends. (Found in review: the merge was
// cut off with the request.)
func TestClientTimeoutDoesNotAbortTheMerge(t *testing.T) {
	n := startInProcess(t, t.TempDir())
	ctx := context.Background()
	if _, err := n.api.CreateVolume(ctx, admin.CreateVolumeRequest{Name: "v", Size: admin.Size{Text: "16MiB"}}); err != nil {
		t.Fatal(err)
	}
	s := n.session("v")
	mustDo(t, s, "write 1 MiB", write10(0, 2048), make([]byte, 1<<20), 0, statusGood)
	s.Close()
	if _, err := n.api.CreateSnapshot(ctx, "v", "s1"); err != nil {
		t.Fatal(err)
	}
	remove := n.fs.Inject(vfs.Fault{Op: vfs.OpWrite, Path: "/layers/", Delay: 20 * time.Millisecond})
	impatient := &admin.Client{BaseURL: n.api.BaseURL, HTTPClient: &http.Client{Timeout: time.Second}}
	if err := impatient.DeleteSnapshot(ctx, "v", "s1"); err == nil {
		t.Fatal("setup: the merge finished within the client's timeout")
	}
	time.Sleep(6 * time.Second) // the merge would have finished by now
	remove()
	v, err := n.api.GetVolume(ctx, "v")
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Snapshots) != 0 {
		t.Fatalf("the client's timeout stopped the merge server-side: snapshot %s is still there", v.Snapshots[0].Name)
	}
}
