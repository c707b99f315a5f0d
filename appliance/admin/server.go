package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
)

// Backend is what the handlers need from a node.
type Backend interface {
	// Health says whether the node is ready: part of a cluster, its
	// volumes reconciled once.
	Health() Health
	ListVolumes(ctx context.Context) []Volume
	GetVolume(ctx context.Context, name string) (Volume, error)
	// CreateVolume creates and serves a volume; req is validated.
	CreateVolume(ctx context.Context, req CreateVolumeRequest) (Volume, error)
	// DeleteVolume stops serving a volume (closing its sessions) and
	// deletes it.
	DeleteVolume(ctx context.Context, name string) error
	CreateSnapshot(ctx context.Context, volume, name string) (Snapshot, error)
	DeleteSnapshot(ctx context.Context, volume, snapshot string) error
	RevertVolume(ctx context.Context, volume string, req RevertRequest) error
	CloneVolume(ctx context.Context, source string, req CloneRequest) (Volume, error)
	ResizeVolume(ctx context.Context, volume string, size Size) (Volume, error)

	ListNodes(ctx context.Context) ([]Node, error)
	// RemoveNode takes a node out of the cluster.
	RemoveNode(ctx context.Context, name string) error
	AddCopy(ctx context.Context, volume string, req CopyRequest) (Volume, error)
	RemoveCopy(ctx context.Context, volume, node string) (Volume, error)
	MoveVolume(ctx context.Context, volume string, req MoveRequest) (Volume, error)
	VerifyVolume(ctx context.Context, volume string) (VerifyResult, error)
	// Metrics serves GET /metrics (Prometheus text format).
	Metrics() http.Handler
}

const maxBody = 1 << 20

// Handler returns the admin API's HTTP handler.
func Handler(b Backend, log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.Default()
	}
	h := &handler{b: b, log: log}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", h.health)
	mux.HandleFunc("GET /v1/volumes", h.list)
	mux.HandleFunc("POST /v1/volumes", h.create)
	mux.HandleFunc("GET /v1/volumes/{name}", h.get)
	mux.HandleFunc("DELETE /v1/volumes/{name}", h.delete)
	mux.HandleFunc("GET /v1/volumes/{name}/snapshots", h.listSnapshots)
	mux.HandleFunc("POST /v1/volumes/{name}/snapshots", h.createSnapshot)
	mux.HandleFunc("DELETE /v1/volumes/{name}/snapshots/{snapshot}", h.deleteSnapshot)
	mux.HandleFunc("POST /v1/volumes/{name}/revert", h.revert)
	mux.HandleFunc("POST /v1/volumes/{name}/clone", h.clone)
	mux.HandleFunc("POST /v1/volumes/{name}/resize", h.resize)
	mux.HandleFunc("POST /v1/volumes/{name}/copies", h.addCopy)
	mux.HandleFunc("DELETE /v1/volumes/{name}/copies/{node}", h.removeCopy)
	mux.HandleFunc("POST /v1/volumes/{name}/move", h.move)
	mux.HandleFunc("POST /v1/volumes/{name}/verify", h.verify)
	mux.HandleFunc("GET /v1/nodes", h.nodes)
	mux.HandleFunc("DELETE /v1/nodes/{node}", h.removeNode)
	mux.Handle("GET /metrics", b.Metrics())
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get(localOnlyHeader) != "" {
			r = r.WithContext(context.WithValue(r.Context(), localOnlyKey{}, true))
		}
		if from := r.Header.Get(forwardedHeader); from != "" {
			r = r.WithContext(context.WithValue(r.Context(), forwardedKey{}, from))
		}
		mux.ServeHTTP(w, r)
	})
}

// localOnlyHeader marks a request one node makes of another: answer from
// your own view.
const localOnlyHeader = "X-Tandem-Local-Only"

type localOnlyKey struct{}

// forwardedHeader names the node that forwarded a request.
const forwardedHeader = "X-Tandem-Forwarded-By"

type forwardedKey struct{}

// WithoutForwarded returns ctx without the forwarding mark: for a new
// request a node makes while handling a forwarded one.
func WithoutForwarded(ctx context.Context) context.Context {
	return context.WithValue(ctx, forwardedKey{}, "")
}

// ForwardedBy returns the node that forwarded the request here, "" if it
// came from a client.
func ForwardedBy(ctx context.Context) string {
	v, _ := ctx.Value(forwardedKey{}).(string)
	return v
}

// LocalOnly reports whether the request asks the node to answer from its
// own view, without asking other nodes.
func LocalOnly(ctx context.Context) bool {
	v, _ := ctx.Value(localOnlyKey{}).(bool)
	return v
}

type handler struct {
	b   Backend
	log *slog.Logger
}

func (h *handler) reply(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	if v != nil {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(v)
	}
}

func (h *handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	status := http.StatusInternalServerError
	switch {
	case errors.Is(err, ErrNotFound):
		status = http.StatusNotFound
	case errors.Is(err, ErrConflict):
		status = http.StatusConflict
	case errors.Is(err, ErrInvalid):
		status = http.StatusBadRequest
	case errors.Is(err, ErrUnavailable):
		status = http.StatusServiceUnavailable
	}
	if status == http.StatusInternalServerError {
		h.log.Error("admin API request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	h.reply(w, status, errorBody{Error: err.Error()})
}

func (h *handler) health(w http.ResponseWriter, r *http.Request) {
	hl := h.b.Health()
	status := http.StatusOK
	if hl.Status != "ok" {
		status = http.StatusServiceUnavailable
	}
	h.reply(w, status, hl)
}

func (h *handler) list(w http.ResponseWriter, r *http.Request) {
	h.reply(w, http.StatusOK, h.b.ListVolumes(r.Context()))
}

func (h *handler) get(w http.ResponseWriter, r *http.Request) {
	v, err := h.b.GetVolume(r.Context(), r.PathValue("name"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	h.reply(w, http.StatusOK, v)
}

// decode reads one JSON object of type T from the body; on failure it has
// answered and returns false.
func decode[T any](h *handler, w http.ResponseWriter, r *http.Request, what string, req *T) bool {
	body := http.MaxBytesReader(w, r.Body, maxBody)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(req); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			h.reply(w, http.StatusRequestEntityTooLarge, errorBody{Error: fmt.Sprintf("request body larger than %d bytes", maxBody)})
			return false
		}
		h.fail(w, r, fmt.Errorf("%w: request body is not %s: %v", ErrInvalid, what, err))
		return false
	}
	if _, err := dec.Token(); err != io.EOF {
		h.fail(w, r, fmt.Errorf("%w: request body has data after the JSON object", ErrInvalid))
		return false
	}
	return true
}

func (h *handler) create(w http.ResponseWriter, r *http.Request) {
	var req CreateVolumeRequest
	if !decode(h, w, r, "a volume", &req) {
		return
	}
	if err := ValidateCreate(&req); err != nil {
		h.fail(w, r, err)
		return
	}
	v, err := h.b.CreateVolume(r.Context(), req)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	h.reply(w, http.StatusCreated, v)
}

func (h *handler) listSnapshots(w http.ResponseWriter, r *http.Request) {
	v, err := h.b.GetVolume(r.Context(), r.PathValue("name"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	h.reply(w, http.StatusOK, v.Snapshots)
}

func (h *handler) createSnapshot(w http.ResponseWriter, r *http.Request) {
	var req SnapshotRequest
	if !decode(h, w, r, "a snapshot", &req) {
		return
	}
	sn, err := h.b.CreateSnapshot(r.Context(), r.PathValue("name"), req.Name)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	h.reply(w, http.StatusCreated, sn)
}

func (h *handler) deleteSnapshot(w http.ResponseWriter, r *http.Request) {
	if err := h.b.DeleteSnapshot(r.Context(), r.PathValue("name"), r.PathValue("snapshot")); err != nil {
		h.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (h *handler) revert(w http.ResponseWriter, r *http.Request) {
	var req RevertRequest
	if !decode(h, w, r, "a revert request", &req) {
		return
	}
	if req.Snapshot == "" {
		h.fail(w, r, fmt.Errorf("%w: name the snapshot to revert to", ErrInvalid))
		return
	}
	if err := h.b.RevertVolume(r.Context(), r.PathValue("name"), req); err != nil {
		h.fail(w, r, err)
		return
	}
	v, err := h.b.GetVolume(r.Context(), r.PathValue("name"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	h.reply(w, http.StatusOK, v)
}

func (h *handler) clone(w http.ResponseWriter, r *http.Request) {
	var req CloneRequest
	if !decode(h, w, r, "a clone request", &req) {
		return
	}
	v, err := h.b.CloneVolume(r.Context(), r.PathValue("name"), req)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	h.reply(w, http.StatusCreated, v)
}

func (h *handler) resize(w http.ResponseWriter, r *http.Request) {
	var req ResizeRequest
	if !decode(h, w, r, "a resize request", &req) {
		return
	}
	v, err := h.b.ResizeVolume(r.Context(), r.PathValue("name"), req.Size)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	h.reply(w, http.StatusOK, v)
}

func (h *handler) delete(w http.ResponseWriter, r *http.Request) {
	if err := h.b.DeleteVolume(r.Context(), r.PathValue("name")); err != nil {
		h.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (h *handler) addCopy(w http.ResponseWriter, r *http.Request) {
	var req CopyRequest
	if !decode(h, w, r, "a copy request", &req) {
		return
	}
	if req.Node == "" {
		h.fail(w, r, fmt.Errorf("%w: name the node for the new copy", ErrInvalid))
		return
	}
	v, err := h.b.AddCopy(r.Context(), r.PathValue("name"), req)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	h.reply(w, http.StatusOK, v)
}

func (h *handler) removeCopy(w http.ResponseWriter, r *http.Request) {
	v, err := h.b.RemoveCopy(r.Context(), r.PathValue("name"), r.PathValue("node"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	h.reply(w, http.StatusOK, v)
}

func (h *handler) move(w http.ResponseWriter, r *http.Request) {
	var req MoveRequest
	if !decode(h, w, r, "a move request", &req) {
		return
	}
	if req.Primary == "" {
		h.fail(w, r, fmt.Errorf("%w: name the node to become primary", ErrInvalid))
		return
	}
	v, err := h.b.MoveVolume(r.Context(), r.PathValue("name"), req)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	h.reply(w, http.StatusOK, v)
}

func (h *handler) verify(w http.ResponseWriter, r *http.Request) {
	res, err := h.b.VerifyVolume(r.Context(), r.PathValue("name"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	h.reply(w, http.StatusOK, res)
}

func (h *handler) nodes(w http.ResponseWriter, r *http.Request) {
	ns, err := h.b.ListNodes(r.Context())
	if err != nil {
		h.fail(w, r, err)
		return
	}
	h.reply(w, http.StatusOK, ns)
}

func (h *handler) removeNode(w http.ResponseWriter, r *http.Request) {
	if err := h.b.RemoveNode(r.Context(), r.PathValue("node")); err != nil {
		h.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
