from silr.cli import main

raise SystemExit(main())
