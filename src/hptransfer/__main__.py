from hptransfer.cli import main

raise SystemExit(main())
