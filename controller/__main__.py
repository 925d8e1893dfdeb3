from controller.server import main

raise SystemExit(main())
