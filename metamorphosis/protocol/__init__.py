"""The MetaQ text protocol: commands, framing, stored records, message ids."""
