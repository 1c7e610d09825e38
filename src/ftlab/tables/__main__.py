from ftlab.report.build import main

main()
