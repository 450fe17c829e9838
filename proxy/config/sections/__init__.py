"""Readers of the config file's sections, each building on `proxy.config.reader.Reader`."""
