from ddpm_gui.cli import main

raise SystemExit(main())
