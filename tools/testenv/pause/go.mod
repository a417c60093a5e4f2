module ugo.testenv/pause

go 1.26.0
