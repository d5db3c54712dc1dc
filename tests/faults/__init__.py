"""The gateway against its databases going away under load (issue 16)."""
