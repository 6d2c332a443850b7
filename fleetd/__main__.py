"""``python -m fleetd`` runs the daemon."""

from fleetd.daemon import main

raise SystemExit(main())
