package replication

import "tandem.io/tandem/volume"

// The local copy the appliance passes is a volume.Volume.
var _ Copy = (*volume.Volume)(nil)
