"""Built-in worktimes. Every module in this package is a plugin registered through the same
``register_worktimes`` hook third-party packages use (see ``dcp_worktimes.plugins``)."""
