//! Part of tapstack; see the workspace README. Built out by its own issue.
