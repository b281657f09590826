"""One module per subcommand; cli.py parses options and calls these. No command imports another."""
