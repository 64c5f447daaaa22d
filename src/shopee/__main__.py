import sys

from shopee.cli import main

sys.exit(main())
