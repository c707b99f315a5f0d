package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"time"
)

// Client calls a node's admin API.
type Client struct {
	BaseURL    string // e.g. http://127.0.0.1:7480
	HTTPClient *http.Client
	// LocalOnly asks the node to answer reads from its own view, without
	// asking other nodes (nodes set it when they ask each other).
	LocalOnly bool
	// Forwarded names the node forwarding the request: the receiver does
	// not forward it again.
	Forwarded string
}

// APIError is an error response from the API.
type APIError struct {
	Status  int
	Message string
}

func (e *APIError) Error() string { return e.Message }

// ErrUnreachable says the API did not answer.
var ErrUnreachable = errors.New("admin API unreachable")

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body *bytes.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	} else {
		body = bytes.NewReader(nil)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(c.BaseURL, "/")+path, body)
	if err != nil {
		return fmt.Errorf("admin API URL %q: %w", c.BaseURL, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.LocalOnly {
		req.Header.Set(localOnlyHeader, "1")
	}
	if c.Forwarded != "" {
		req.Header.Set(forwardedHeader, c.Forwarded)
	}
	hc := c.HTTPClient
	if hc == nil {
		hc = &http.Client{Timeout: 60 * time.Second}
	}
	resp, err := hc.Do(req)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("%w: nothing listens at %s; is `tandem serve` running there? (set --api or TANDEM_API)", ErrUnreachable, c.BaseURL)
		}
		return fmt.Errorf("%w: %v", ErrUnreachable, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		var eb errorBody
		if json.NewDecoder(resp.Body).Decode(&eb) != nil || eb.Error == "" {
			eb.Error = resp.Status
		}
		return &APIError{Status: resp.StatusCode, Message: eb.Error}
	}
	if out != nil {
		return json.NewDecoder(resp.Body).Decode(out)
	}
	return nil
}

// Health calls GET /healthz.
func (c *Client) Health(ctx context.Context) (Health, error) {
	var h Health
	return h, c.do(ctx, http.MethodGet, "/healthz", nil, &h)
}

// ListVolumes calls GET /v1/volumes.
func (c *Client) ListVolumes(ctx context.Context) ([]Volume, error) {
	var v []Volume
	return v, c.do(ctx, http.MethodGet, "/v1/volumes", nil, &v)
}

// GetVolume calls GET /v1/volumes/{name}.
func (c *Client) GetVolume(ctx context.Context, name string) (Volume, error) {
	var v Volume
	return v, c.do(ctx, http.MethodGet, "/v1/volumes/"+url.PathEscape(name), nil, &v)
}

// CreateVolume calls POST /v1/volumes.
func (c *Client) CreateVolume(ctx context.Context, req CreateVolumeRequest) (Volume, error) {
	var v Volume
	return v, c.do(ctx, http.MethodPost, "/v1/volumes", req, &v)
}

// DeleteVolume calls DELETE /v1/volumes/{name}.
func (c *Client) DeleteVolume(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/volumes/"+url.PathEscape(name), nil, nil)
}

// CreateSnapshot snapshots a volume; an empty name means one from the time.
func (c *Client) CreateSnapshot(ctx context.Context, volume, name string) (Snapshot, error) {
	var s Snapshot
	return s, c.do(ctx, http.MethodPost, "/v1/volumes/"+url.PathEscape(volume)+"/snapshots", SnapshotRequest{Name: name}, &s)
}

// ListSnapshots lists a volume's snapshots, oldest first.
func (c *Client) ListSnapshots(ctx context.Context, volume string) ([]Snapshot, error) {
	var s []Snapshot
	return s, c.do(ctx, http.MethodGet, "/v1/volumes/"+url.PathEscape(volume)+"/snapshots", nil, &s)
}

// DeleteSnapshot merges a snapshot into its children and deletes it.
func (c *Client) DeleteSnapshot(ctx context.Context, volume, snapshot string) error {
	return c.do(ctx, http.MethodDelete, "/v1/volumes/"+url.PathEscape(volume)+"/snapshots/"+url.PathEscape(snapshot), nil, nil)
}

// RevertVolume reverts a volume to a snapshot.
func (c *Client) RevertVolume(ctx context.Context, volume string, req RevertRequest) (Volume, error) {
	var v Volume
	return v, c.do(ctx, http.MethodPost, "/v1/volumes/"+url.PathEscape(volume)+"/revert", req, &v)
}

// CloneVolume makes a new volume from a snapshot of source.
func (c *Client) CloneVolume(ctx context.Context, source string, req CloneRequest) (Volume, error) {
	var v Volume
	return v, c.do(ctx, http.MethodPost, "/v1/volumes/"+url.PathEscape(source)+"/clone", req, &v)
}

// ResizeVolume grows a volume.
func (c *Client) ResizeVolume(ctx context.Context, volume string, size Size) (Volume, error) {
	var v Volume
	return v, c.do(ctx, http.MethodPost, "/v1/volumes/"+url.PathEscape(volume)+"/resize", ResizeRequest{Size: size}, &v)
}

// ListNodes calls GET /v1/nodes.
func (c *Client) ListNodes(ctx context.Context) ([]Node, error) {
	var out []Node
	return out, c.do(ctx, http.MethodGet, "/v1/nodes", nil, &out)
}

// RemoveNode calls DELETE /v1/nodes/{node}.
func (c *Client) RemoveNode(ctx context.Context, node string) error {
	return c.do(ctx, http.MethodDelete, "/v1/nodes/"+url.PathEscape(node), nil, nil)
}

// AddCopy calls POST /v1/volumes/{name}/copies.
func (c *Client) AddCopy(ctx context.Context, volume string, req CopyRequest) (Volume, error) {
	var v Volume
	return v, c.do(ctx, http.MethodPost, "/v1/volumes/"+url.PathEscape(volume)+"/copies", req, &v)
}

// RemoveCopy calls DELETE /v1/volumes/{name}/copies/{node}.
func (c *Client) RemoveCopy(ctx context.Context, volume, node string) (Volume, error) {
	var v Volume
	return v, c.do(ctx, http.MethodDelete, "/v1/volumes/"+url.PathEscape(volume)+"/copies/"+url.PathEscape(node), nil, &v)
}

// MoveVolume calls POST /v1/volumes/{name}/move.
func (c *Client) MoveVolume(ctx context.Context, volume string, req MoveRequest) (Volume, error) {
	var v Volume
	return v, c.do(ctx, http.MethodPost, "/v1/volumes/"+url.PathEscape(volume)+"/move", req, &v)
}

// VerifyVolume calls POST /v1/volumes/{name}/verify.
func (c *Client) VerifyVolume(ctx context.Context, volume string) (VerifyResult, error) {
	var r VerifyResult
	return r, c.do(ctx, http.MethodPost, "/v1/volumes/"+url.PathEscape(volume)+"/verify", nil, &r)
}
