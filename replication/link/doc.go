// Package link carries every TCP connection between Tandem nodes (raft,
// replication data, internal RPC) and admits only processes that hold the
// cluster key. Copies of volumes and the catalog flow over these links, so
// a process without the key must not be able to join, vote, or read or
// write a copy — whether it connects to a node or a node connects to it (a
// fake replica must never receive a written block).
//
// One TCP listener serves every purpose: a connection names its purpose in
// the handshake and the Listener hands it to that purpose's net.Listener
// (Accept), so a node needs one link address and one firewall rule.
//
// # Handshake
//
// Both sides prove they hold the key before either sends anything else; the
// client verifies the server before the server verifies the client, so a
// client never sends data to an impostor, and a server never hands an
// unauthenticated connection to its consumers:
//
//	C→S hello   magic "TLNK", version, purpose, flags, 32-byte nonce, name
//	S→C hello   magic, version, status, flags, 32-byte nonce, name, server MAC
//	C→S finish  status, client MAC
//	S→C result  status
//
// The MACs are HMAC-SHA256 under a key derived from the cluster key, over a
// direction label and the transcript (both hellos: versions, purpose, flags,
// both nonces, both names), so a MAC cannot be reflected to the other
// direction, replayed on another connection (the other side's nonce is
// fresh) or moved to another purpose. MACs are compared with hmac.Equal.
// Each direction then gets its own AES-256-GCM key, derived (HKDF-SHA256)
// from the cluster key and the transcript hash, hence from both nonces.
//
// A side that finds the other's MAC wrong says so (status) and closes; both
// report ErrAuth. Every handshake message has a fixed part and a name of at
// most MaxNameLen bytes: nothing read before authentication can make a node
// allocate more than a few hundred bytes. The server bounds the time a
// handshake may take (Config.HandshakeTimeout) and the number of connections
// in handshake at once; when all slots are taken, the connection that has
// been in handshake the longest is closed to make room, so idle connections
// cannot lock nodes out (a real handshake takes two round trips).
//
// The handshake proves the peer holds the key, not that it is the node at
// the address dialled: a network attacker can relay a connection to another
// key holder, even back to the dialler itself. Encrypted, a relay only
// forwards ciphertext; callers that know whom they dial compare Conn.Peer
// with the name they expect.
//
// # Frames
//
// After the handshake each Write is cut into frames of at most MaxFrame
// bytes: a 4-byte big-endian length, then the AES-GCM ciphertext and tag,
// with the length as additional data and a per-direction frame counter as
// the nonce. Every 2^20 frames both ends move to a key derived from the
// last, so no key seals more than 64 GiB. A frame that fails
// authentication (tampered, truncated, replayed, dropped or reordered: the
// counter no longer matches), or whose length is out of bounds, fails the
// read and closes the connection.
//
// With Config.Insecure on both sides, bytes flow raw after the handshake:
// the link is then authenticated at connect time only, and anyone on the
// path can read, alter or inject data. Meant for trusted, isolated storage
// networks where the CPU cost of encryption matters. If only one side asks
// for it, the connection is encrypted (the flags are in the transcript, so
// nobody can strip encryption in transit).
package link
