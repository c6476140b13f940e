"""The Workspace spec, its status conditions and the error hierarchy."""
