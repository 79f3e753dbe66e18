"""s3prl upstreams of fedhubert, in s3prl's upstream layout (one folder per upstream)."""
