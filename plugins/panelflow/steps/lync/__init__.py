"""Lync / Skype for Business: its pools' users (group actions), call records, SPLA report, Response
Group audio prompts, and the hosted voice contracts sold on them (see ``_backend`` for the pools)."""
