"""A local shop that reproduces JD.com page structure: the demo default and the test target."""
