"""`python -m rwkv_hub` is the `rwkv-hub` command."""

from rwkv_hub.cli import main

raise SystemExit(main())
