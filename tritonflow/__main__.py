from tritonflow.cli import main

raise SystemExit(main())
