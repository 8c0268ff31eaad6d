"""One module per command (``<Job>Config`` dataclass + ``run``), the command registry (:mod:`.registry`), and the
stages two or more commands share (:mod:`.stages`, :mod:`.clip_adaptation`, :mod:`.targets`): a command module
imports shared modules, never another command's helpers."""
