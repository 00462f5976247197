import sys

from shoesearch.cli import main

sys.exit(main())
