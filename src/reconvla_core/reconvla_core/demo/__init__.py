"""The main job and the evidence: `reconvla demo` (the whole journey in the twin) and
`reconvla study recon` (the paper's reconstruction ablation at our scale)."""
