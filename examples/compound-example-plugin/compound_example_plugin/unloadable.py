"""An entry point that must never be imported unless named in COMPOUND_PLUGINS."""

raise RuntimeError("compound_example_plugin.unloadable was imported, though no one named it")
