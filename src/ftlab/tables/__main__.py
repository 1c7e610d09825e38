from ftlab.report.tables import main

main()
