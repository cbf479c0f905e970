from kennethlm_core.cli import main

main()
