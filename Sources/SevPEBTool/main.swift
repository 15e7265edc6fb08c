print("sevpeb CLI: under construction")
