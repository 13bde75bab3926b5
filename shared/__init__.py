"""The foundation every BitLoot service stands on."""
