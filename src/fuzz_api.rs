//! Entry points for the fuzz targets in `tests/fuzz/` and their property-test
//! twins in `tests/fuzz_props.rs`. Not a stable API.
