"""diffnas-guide-plugin: the worked examples of docs/plugins.md, one component of every kind."""
