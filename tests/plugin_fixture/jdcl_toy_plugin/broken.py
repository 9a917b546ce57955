raise ImportError("this plugin is broken on purpose (jdcl-bench tests that it breaks nothing else)")
